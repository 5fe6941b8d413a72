"""Continuous force protocols at the full frame rate: ramps and clamps."""


import math
import time
from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import Msg

from magscope_devices._microscope import Microscope

from ._arguments import PlanArgs, PlanArgumentError
from ._force_calibration import fit_band_hz
from ._preflight import (
    check_microscope,
    loaded_force_calibration,
    plan_metadata,
    require_force_calibration,
    select_beads,
)
from ._recording import TrackRecorder, extension_traces, lateral_traces, mean_extensions
from ._results import ARRAY, FLOAT, IDS, ResultRecord, emit, set_layouts
from ._safety import check_safe_height, with_safe_finish
from ._video import check_video_option, with_video_mode
from .analysis import psd_force, subtract_drift

__all__ = ["force_clamp", "force_ramp"]

RAMP_FIELDS: dict[str, tuple[Any, str]] = {
    "time_s": (FLOAT, "s"),
    "force_pn": (FLOAT, "pN"),
    "bead_id": (IDS, ""),
    "extension_nm": (ARRAY, "nm"),
}

CLAMP_FIELDS: dict[str, tuple[Any, str]] = {
    "force_pn": (FLOAT, "pN"),
    "duration_s": (FLOAT, "s"),
    "bead_id": (IDS, ""),
    "extension_nm": (ARRAY, "nm"),
    "extension_nm_err": (ARRAY, "nm"),
    "extension_std_nm": (ARRAY, "nm"),
    "lateral_std_nm": (ARRAY, "nm"),
    "force_psd_pn": (ARRAY, "pN"),
    "force_psd_pn_err": (ARRAY, "pN"),
}


def force_ramp(
    microscope: Microscope,
    start_pn: float,
    stop_pn: float,
    rate_pn_per_s: float,
    *,
    beads: Sequence[int] | None = None,
    update_hz: float = 10.0,
    settle_s: float = 1.0,
    safe_magnet_height_mm: float | None = None,
    video: str | None = None,
    every_n: int | None = None,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Ramp the force linearly from ``start_pn`` to ``stop_pn`` at ``rate_pn_per_s``
    (pN/s, positive), recording every frame. The force setpoint is updated ``update_hz``
    times per second (the magnets follow at their velocity).

    Streams: ``tracks`` (every frame), ``ramp`` (one event per setpoint update: time since
    the ramp started (s), the force, each bead's mean extension over that interval). The
    magnets end at ``safe_magnet_height_mm`` (mm; None: the microscope's configured safe height). Returns the run uid.

    ``video``: ``"roi_crops"`` (every bead's ROI at every frame) or ``"frames_every_n"``
    (the whole frame every ``every_n`` frames) records those images beside the tracks, in
    stream ``video`` (:func:`~magscope_plans.with_video_mode`; the mode is put back at
    the end); None leaves ``microscope.video.mode`` as it is.
    """
    plan = "force_ramp"
    args = PlanArgs(plan)
    start_pn = args.real("start_pn", start_pn, units="pN")
    stop_pn = args.real("stop_pn", stop_pn, units="pN")
    if stop_pn == start_pn:
        raise PlanArgumentError(
            plan, "stop_pn", stop_pn, f"equals start_pn={start_pn:g}",
            "a stop force different from the start force: nothing to ramp",
        )
    rate_pn_per_s = args.positive("rate_pn_per_s", rate_pn_per_s, units="pN/s")
    wanted = args.bead_ids("beads", beads)
    update_hz = args.real("update_hz", update_hz, units="Hz", low=0.0, high=50.0, low_open=True)
    settle_s = args.non_negative("settle_s", settle_s, units="s")
    safe_magnet_height_mm = args.optional_real(
        "safe_magnet_height_mm", safe_magnet_height_mm, units="mm"
    )
    video, every_n = check_video_option(args, video, every_n)
    md = args.metadata("md", md)
    check_microscope(microscope, plan, tracker=True)
    yield from require_force_calibration(microscope, [start_pn], plan=plan, argument="start_pn", single=True)
    yield from require_force_calibration(microscope, [stop_pn], plan=plan, argument="stop_pn", single=True)
    safe_magnet_height_mm = yield from check_safe_height(
        microscope, safe_magnet_height_mm, plan=plan
    )
    sel = yield from select_beads(microscope, wanted, plan=plan)
    cal = yield from loaded_force_calibration(microscope)
    offsets, _ = cal.radius_offsets_nm(sel.beads)  # extension: the tether's
    duration = abs(stop_pn - start_pn) / rate_pn_per_s
    fs = float((yield from bps.rd(microscope.camera.frame_rate_hz)))
    n_updates = max(1, math.ceil(duration * update_hz))
    setpoints = np.linspace(start_pn, stop_pn, n_updates + 1)
    chunk = max(1, int(round(fs / update_hz)))
    recorder = TrackRecorder(
        microscope.tracker, chunk_frames=chunk, video=getattr(microscope, "video", None)
    )
    ramp = ResultRecord(RAMP_FIELDS, name="ramp")
    yield from set_layouts(microscope.tracker, sel.beads, ramp)
    _md = plan_metadata(
        plan,
        {
            "start_pn": start_pn, "stop_pn": stop_pn, "rate_pn_per_s": rate_pn_per_s,
            "update_hz": update_hz, "settle_s": settle_s,
        },
        sel,
        md,
        force_calibration_file=str((yield from bps.rd(microscope.force.calibration_file))),
        bead_radius_offsets_nm=offsets.tolist(),
    )

    @bpp.stage_decorator([microscope])
    @bpp.run_decorator(md=_md)
    def inner() -> Generator[Msg, Any, None]:
        yield from bps.mv(microscope.force, float(start_pn))
        yield from bps.sleep(settle_s)
        yield from recorder.start(int(math.ceil(duration * fs)) + chunk)
        t0 = time.monotonic()
        times = [0.0]
        for k, f in enumerate(setpoints[1:], start=1):
            wait = t0 + k / update_hz - time.monotonic()
            if wait > 0:
                yield from bps.sleep(wait)
            yield from bps.abs_set(microscope.force, float(f), group="ramp")
            times.append(time.monotonic() - t0)
        yield from bps.wait(group="ramp")
        tracks = yield from recorder.finish()
        ext = extension_traces(tracks, sel.beads, sel.reference, offsets)
        t_frames = tracks["timestamp"] - tracks["timestamp"][0]
        edges = np.append(np.asarray(times), np.inf)
        for k in range(len(times)):
            rows = (t_frames >= edges[k]) & (t_frames < edges[k + 1])
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(ext[rows], axis=0) if rows.any() else np.full(sel.beads.size, np.nan)
            yield from emit(
                ramp, "ramp", time_s=times[k], force_pn=float(setpoints[k]),
                bead_id=sel.beads, extension_nm=mean,
            )

    return (
        yield from with_safe_finish(
            with_video_mode(inner(), microscope, video, every_n), microscope,
            safe_magnet_height_mm=safe_magnet_height_mm
        )
    )


def force_clamp(
    microscope: Microscope,
    force_pn: float,
    duration_s: float,
    *,
    beads: Sequence[int] | None = None,
    axis: str = "y",
    settle_s: float = 1.0,
    chunk_frames: int = 100,
    safe_magnet_height_mm: float | None = None,
    video: str | None = None,
    every_n: int | None = None,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Hold the force at ``force_pn`` (pN) for ``duration_s`` (s), recording every frame
    (e.g. to watch a protein fold and unfold at constant force).

    Streams: ``tracks`` (every frame), ``clamp`` (one event: per bead the mean extension
    and its standard error, the extension and lateral standard deviations, and the force
    from the lateral spectrum as a check of the calibration). The magnets end at
    ``safe_magnet_height_mm`` (mm; None: the microscope's configured safe height). Returns the run uid.

    ``video``: ``"roi_crops"`` (every bead's ROI at every frame) or ``"frames_every_n"``
    (the whole frame every ``every_n`` frames) records those images beside the tracks, in
    stream ``video`` (:func:`~magscope_plans.with_video_mode`; the mode is put back at
    the end); None leaves ``microscope.video.mode`` as it is.
    """
    plan = "force_clamp"
    args = PlanArgs(plan)
    force_pn = args.real("force_pn", force_pn, units="pN")
    duration_s = args.positive("duration_s", duration_s, units="s")
    wanted = args.bead_ids("beads", beads)
    axis = args.choice("axis", axis, ("x", "y"))
    settle_s = args.non_negative("settle_s", settle_s, units="s")
    chunk_frames = args.count("chunk_frames", chunk_frames, minimum=1, what="a whole number of frames")
    safe_magnet_height_mm = args.optional_real(
        "safe_magnet_height_mm", safe_magnet_height_mm, units="mm"
    )
    video, every_n = check_video_option(args, video, every_n)
    md = args.metadata("md", md)
    check_microscope(microscope, plan, tracker=True)
    (force,) = yield from require_force_calibration(
        microscope, [force_pn], plan=plan, argument="force_pn", single=True
    )
    safe_magnet_height_mm = yield from check_safe_height(
        microscope, safe_magnet_height_mm, plan=plan
    )
    sel = yield from select_beads(microscope, wanted, plan=plan)
    fs = float((yield from bps.rd(microscope.camera.frame_rate_hz)))
    exposure = float((yield from bps.rd(microscope.camera.exposure_s)))
    nominal = float((yield from bps.rd(microscope.tracker.bead_radius_nm)))
    cal = yield from loaded_force_calibration(microscope)
    offsets, _ = cal.radius_offsets_nm(sel.beads)  # extension: the tether's
    # each bead's radius: the reference beads' plus its offset (the nominal one unknown)
    radii = (cal.reference_radius_nm or nominal) + offsets
    recorder = TrackRecorder(
        microscope.tracker, chunk_frames=chunk_frames, video=getattr(microscope, "video", None)
    )
    clamp = ResultRecord(CLAMP_FIELDS, name="clamp")
    yield from set_layouts(microscope.tracker, sel.beads, clamp)
    _md = plan_metadata(
        plan,
        {
            "force_pn": force, "duration_s": duration_s,
            "axis": axis, "settle_s": settle_s,
        },
        sel,
        md,
        force_calibration_file=str((yield from bps.rd(microscope.force.calibration_file))),
        bead_radius_offsets_nm=offsets.tolist(),
    )

    @bpp.stage_decorator([microscope])
    @bpp.run_decorator(md=_md)
    def inner() -> Generator[Msg, Any, None]:
        yield from bps.mv(microscope.force, force)
        yield from bps.sleep(settle_s)
        tracks = yield from recorder.record(int(round(duration_s * fs)))
        ext = extension_traces(tracks, sel.beads, sel.reference, offsets)
        lateral = lateral_traces(tracks, sel.beads, sel.reference, axis=axis)
        mean, sem = mean_extensions(ext)
        estimates = [
            psd_force(
                lateral[:, b], fs_hz=fs, exposure_s=exposure,
                length_nm=float(mean[b]), radius_nm=float(radii[b]),
                f_max_hz=fit_band_hz(
                    lateral[:, b], length_nm=float(mean[b]), radius_nm=float(radii[b]),
                    fs_hz=fs,
                ),
            )
            for b in range(sel.beads.size)
        ]
        with np.errstate(invalid="ignore"):
            yield from emit(
                clamp, "clamp",
                force_pn=force, duration_s=ext.shape[0] / fs, bead_id=sel.beads,
                extension_nm=mean, extension_nm_err=sem,
                extension_std_nm=np.nanstd(subtract_drift(ext, np.zeros(ext.shape[0])), axis=0),
                lateral_std_nm=np.nanstd(lateral, axis=0),
                force_psd_pn=[r.force_pn for r in estimates],
                force_psd_pn_err=[r.force_pn_err for r in estimates],
            )

    return (
        yield from with_safe_finish(
            with_video_mode(inner(), microscope, video, every_n), microscope,
            safe_magnet_height_mm=safe_magnet_height_mm
        )
    )
