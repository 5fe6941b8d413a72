"""Force-extension curves with worm-like-chain fits, and rotation-extension (hat) curves."""


from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import Msg

from magscope_devices._force_curve import ForceCalibration
from magscope_devices._microscope import Microscope

from ._arguments import PlanArgs
from ._preflight import (
    BeadSelection,
    check_axis_limits,
    check_microscope,
    loaded_force_calibration,
    plan_metadata,
    require_force_calibration,
    select_beads,
)
from ._recording import TrackRecorder, extension_traces, mean_extensions
from ._results import ARRAY, FLOAT, IDS, ResultRecord, emit, set_layouts
from ._safety import check_safe_height, with_safe_finish
from ._video import check_video_option, with_video_mode
from .analysis import buckling_point, wlc_fit

__all__ = ["force_extension", "force_sequence", "rotation_extension"]

_DIRECTIONS = ("up", "down", "up_down", "down_up", "as_given")

EXTENSION_FIELDS: dict[str, tuple[Any, str]] = {
    "force_pn": (FLOAT, "pN"),
    "magnet_z_mm": (FLOAT, "mm"),
    "turns": (FLOAT, "turns"),
    "bead_id": (IDS, ""),
    "bead_force_pn": (ARRAY, "pN"),
    "bead_force_pn_err": (ARRAY, "pN"),
    "extension_nm": (ARRAY, "nm"),
    "extension_nm_err": (ARRAY, "nm"),
}

WLC_FIELDS: dict[str, tuple[Any, str]] = {
    "bead_id": (IDS, ""),
    "contour_nm": (ARRAY, "nm"),
    "contour_nm_err": (ARRAY, "nm"),
    "persistence_nm": (ARRAY, "nm"),
    "persistence_nm_err": (ARRAY, "nm"),
    "contour_nm_err_stat": (ARRAY, "nm"),
    "persistence_nm_err_stat": (ARRAY, "nm"),
    "stretch_modulus_pn": (ARRAY, "pN"),
    "residual_rms_nm": (ARRAY, "nm"),
    "offset_nm": (ARRAY, "nm"),
}

BUCKLING_FIELDS: dict[str, tuple[Any, str]] = {
    "force_pn": (FLOAT, "pN"),
    "bead_id": (IDS, ""),
    "positive_turns": (ARRAY, "turns"),
    "positive_turns_err": (ARRAY, "turns"),
    "negative_turns": (ARRAY, "turns"),
    "negative_turns_err": (ARRAY, "turns"),
    "plateau_nm": (ARRAY, "nm"),
    "positive_slope_nm_per_turn": (ARRAY, "nm/turn"),
}


def force_sequence(forces_pn: Sequence[float], direction: str) -> list[float]:
    """The order of the force steps: ``up`` (increasing), ``down``, ``up_down`` (up, then
    back down without repeating the top), ``down_up``, or ``as_given``."""
    args = PlanArgs("force_sequence")
    direction = args.choice("direction", direction, _DIRECTIONS)
    forces = args.reals("forces_pn", forces_pn, units="pN", what="forces", example="[1, 2, 5]")
    up = sorted(forces)
    if direction == "as_given":
        return forces
    if direction == "up":
        return up
    if direction == "down":
        return up[::-1]
    if direction == "up_down":
        return up + up[::-1][1:]
    return up[::-1] + up[1:]


def _bead_forces(cal: ForceCalibration, beads: np.ndarray, magnet_z_mm: float) -> np.ndarray:
    return np.array([cal.force_pn_for_bead(int(b), magnet_z_mm) for b in beads], dtype=float)


def _bead_force_errors(
    cal: ForceCalibration, beads: np.ndarray, magnet_z_mm: float
) -> np.ndarray:
    return np.array(
        [cal.force_err_pn_for_bead(int(b), magnet_z_mm) for b in beads], dtype=float
    )


def wlc_fit_with_errors(
    forces_pn, extension_nm, extension_err_nm, force_err_pn, offset_err_nm, **kw: Any
) -> tuple[Any, float, float]:
    """:func:`wlc_fit` of one bead, and the contour and persistence lengths' standard
    errors (nm) with the calibration's errors in: the force errors (one bead's forces all
    move together: its scale and the curve) and the radius offset's (a constant in the
    extension) each shift the fit, found by fitting again with them moved by 1 sigma,
    and add in quadrature to the fit's own error. Returns (fit, contour error,
    persistence error)."""
    fit = wlc_fit(forces_pn, extension_nm, extension_err_nm=extension_err_nm, **kw)
    contour2, persistence2 = fit.contour_nm_err**2, fit.persistence_nm_err**2
    shifts = []
    if np.all(np.isfinite(force_err_pn)):
        shifts.append((np.asarray(forces_pn) + np.asarray(force_err_pn), extension_nm))
    if np.isfinite(offset_err_nm) and offset_err_nm > 0:
        shifts.append((forces_pn, np.asarray(extension_nm) - offset_err_nm))
    for f, e in shifts:
        moved = wlc_fit(f, e, extension_err_nm=extension_err_nm, **kw)
        contour2 += (moved.contour_nm - fit.contour_nm) ** 2
        persistence2 += (moved.persistence_nm - fit.persistence_nm) ** 2
    return fit, float(np.sqrt(contour2)), float(np.sqrt(persistence2))


def _measure(
    microscope: Microscope,
    sel: BeadSelection,
    recorder: TrackRecorder,
    cal: ForceCalibration,
    record: ResultRecord,
    *,
    force_pn: float,
    turns: float,
    frames: int,
) -> Generator[Msg, Any, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Record ``frames`` frames where the instrument is now; emit the mean extension per
    bead into the ``extension`` stream; return (bead forces, extension, its error, the
    forces' errors)."""
    tracks = yield from recorder.record(frames)
    offsets, _ = cal.radius_offsets_nm(sel.beads)
    mean, sem = mean_extensions(extension_traces(tracks, sel.beads, sel.reference, offsets))
    magnet_z = float((yield from bps.rd(microscope.magnet_z)))
    forces = _bead_forces(cal, sel.beads, magnet_z)
    force_errors = _bead_force_errors(cal, sel.beads, magnet_z)
    yield from emit(
        record, "extension",
        force_pn=force_pn, magnet_z_mm=magnet_z, turns=turns, bead_id=sel.beads,
        bead_force_pn=forces, bead_force_pn_err=force_errors, extension_nm=mean,
        extension_nm_err=sem,
    )
    return forces, mean, sem, force_errors


def force_extension(
    microscope: Microscope,
    forces_pn: Sequence[float],
    *,
    dwell_s: float = 2.0,
    beads: Sequence[int] | None = None,
    direction: str = "up_down",
    settle_s: float = 0.5,
    extensible: bool = False,
    fit_offset: bool = False,
    safe_magnet_height_mm: float | None = None,
    video: str | None = None,
    every_n: int | None = None,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Step the force (pN) through ``forces_pn`` in ``direction`` order; at each step wait
    ``settle_s`` (s), then record ``dwell_s`` (s) at full rate and take each bead's mean
    extension (height above the reference beads, so drift and focus moves cancel) with its
    standard error. Then fit the worm-like chain (Marko-Siggia with Bouchiat's correction;
    ``extensible`` adds a stretch modulus) to every bead: contour and persistence length.
    The extension is the tether's: the height above the reference beads minus the bead's
    radius minus theirs, both from the force calibration
    (:meth:`~magscope_devices.ForceCalibration.radius_offsets_nm`; a calibration without
    radii leaves the difference in, about 30 nm for a 2 % radius spread, 1.5 % of a 2 um
    tether). ``fit_offset`` also fits a constant extension offset, which needs forces
    below ~0.3 pN to separate offset, contour and persistence length.

    Needs a force calibration (``microscope.force``) covering the forces, reference beads
    and an anchored Z-LUT. Streams: ``tracks`` (every frame), ``extension`` (one event per
    step: the force, each bead's own force from the calibration and its error, mean
    extension and error), ``wlc`` (one event: per bead contour_nm, persistence_nm and their
    standard errors with the calibration's force and radius errors in
    (:func:`wlc_fit_with_errors`), and the fit's own errors ``*_err_stat``). The magnets end
    at ``safe_magnet_height_mm`` (mm; None: the microscope's configured safe height). Returns the run uid.

    ``video``: ``"roi_crops"`` (every bead's ROI at every frame) or ``"frames_every_n"``
    (the whole frame every ``every_n`` frames) records those images beside the tracks, in
    stream ``video`` (:func:`~magscope_plans.with_video_mode`; the mode is put back at
    the end); None leaves ``microscope.video.mode`` as it is.
    """
    plan = "force_extension"
    args = PlanArgs(plan)
    given = args.reals(
        "forces_pn", forces_pn, units="pN", what="forces", example="[0.5, 1, 2, 5, 10]",
        min_length=3, min_distinct=3,
    )
    dwell_s = args.positive("dwell_s", dwell_s, units="s")
    wanted = args.bead_ids("beads", beads)
    direction = args.choice("direction", direction, _DIRECTIONS)
    settle_s = args.non_negative("settle_s", settle_s, units="s")
    extensible = args.flag("extensible", extensible)
    fit_offset = args.flag("fit_offset", fit_offset)
    safe_magnet_height_mm = args.optional_real(
        "safe_magnet_height_mm", safe_magnet_height_mm, units="mm"
    )
    video, every_n = check_video_option(args, video, every_n)
    md = args.metadata("md", md)
    check_microscope(microscope, plan, tracker=True)
    sequence = force_sequence(given, direction)
    forces = yield from require_force_calibration(microscope, sequence, plan=plan)
    safe_magnet_height_mm = yield from check_safe_height(
        microscope, safe_magnet_height_mm, plan=plan
    )
    sel = yield from select_beads(microscope, wanted, plan=plan)
    cal = yield from loaded_force_calibration(microscope)
    fs = float((yield from bps.rd(microscope.camera.frame_rate_hz)))
    frames = max(1, int(round(dwell_s * fs)))
    recorder = TrackRecorder(
        microscope.tracker, chunk_frames=frames, video=getattr(microscope, "video", None)
    )
    steps = ResultRecord(EXTENSION_FIELDS, name="extension")
    fits = ResultRecord(WLC_FIELDS, name="wlc")
    yield from set_layouts(microscope.tracker, sel.beads, steps, fits)
    _md = plan_metadata(
        plan,
        {
            "forces_pn": given, "dwell_s": dwell_s,
            "direction": direction, "settle_s": settle_s,
            "extensible": extensible, "fit_offset": fit_offset,
        },
        sel,
        md,
        force_calibration_file=str((yield from bps.rd(microscope.force.calibration_file))),
        bead_radius_offsets_nm=cal.radius_offsets_nm(sel.beads)[0].tolist(),
        num_points=len(forces),
        progress_stream="extension",
    )

    @bpp.stage_decorator([microscope])
    @bpp.run_decorator(md=_md)
    def inner() -> Generator[Msg, Any, None]:
        all_f, all_ext, all_err, all_ferr = [], [], [], []
        for f in forces:
            yield from bps.mv(microscope.force, f)
            yield from bps.sleep(settle_s)
            bead_f, ext, err, f_err = yield from _measure(
                microscope, sel, recorder, cal, steps, force_pn=f, turns=float("nan"),
                frames=frames,
            )
            all_f.append(bead_f)
            all_ext.append(ext)
            all_err.append(err)
            all_ferr.append(f_err)
        F, E, S, FE = (np.array(a) for a in (all_f, all_ext, all_err, all_ferr))
        _, offset_err = cal.radius_offsets_nm(sel.beads)
        fitted = [
            wlc_fit_with_errors(
                F[:, b], E[:, b], S[:, b], FE[:, b], float(offset_err[b]),
                extensible=extensible, fit_offset=fit_offset,
            )
            for b in range(sel.beads.size)
        ]
        results = [r for r, _, _ in fitted]
        yield from emit(
            fits, "wlc",
            bead_id=sel.beads,
            contour_nm=[r.contour_nm for r in results],
            contour_nm_err=[c for _, c, _ in fitted],
            persistence_nm=[r.persistence_nm for r in results],
            persistence_nm_err=[p for _, _, p in fitted],
            contour_nm_err_stat=[r.contour_nm_err for r in results],
            persistence_nm_err_stat=[r.persistence_nm_err for r in results],
            stretch_modulus_pn=[r.stretch_modulus_pn for r in results],
            residual_rms_nm=[r.residual_rms_nm for r in results],
            offset_nm=[r.offset_nm for r in results],
        )

    return (
        yield from with_safe_finish(
            with_video_mode(inner(), microscope, video, every_n), microscope,
            safe_magnet_height_mm=safe_magnet_height_mm
        )
    )


def rotation_extension(
    microscope: Microscope,
    turns: Sequence[float],
    *,
    force_pn: float,
    dwell_s: float = 2.0,
    beads: Sequence[int] | None = None,
    settle_s: float = 0.5,
    safe_magnet_height_mm: float | None = None,
    video: str | None = None,
    every_n: int | None = None,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """At constant force ``force_pn`` (pN), turn the magnets through ``turns`` (turns,
    absolute, in the order given) and record each bead's mean extension after ``settle_s``
    for ``dwell_s`` (s): the hat curve. Then find each bead's buckling points
    (``buckling_point``: where the plateau meets the plectoneme slopes).

    Streams: ``tracks``, ``extension`` (one event per turn), ``buckling`` (one event: per
    bead positive and negative buckling turns with errors, plateau extension, slope).
    The magnets turn back to where they started and rise to ``safe_magnet_height_mm`` (mm; None: the microscope's configured safe height)
    at the end, also on failure or abort. Returns the run uid.

    ``video``: ``"roi_crops"`` (every bead's ROI at every frame) or ``"frames_every_n"``
    (the whole frame every ``every_n`` frames) records those images beside the tracks, in
    stream ``video`` (:func:`~magscope_plans.with_video_mode`; the mode is put back at
    the end); None leaves ``microscope.video.mode`` as it is.
    """
    plan = "rotation_extension"
    args = PlanArgs(plan)
    steps_turns = args.reals(
        "turns", turns, units="turns", what="magnet turns",
        example="list(range(-20, 21, 2))", min_length=5,
    )
    force_pn = args.real("force_pn", force_pn, units="pN")
    dwell_s = args.positive("dwell_s", dwell_s, units="s")
    wanted = args.bead_ids("beads", beads)
    settle_s = args.non_negative("settle_s", settle_s, units="s")
    safe_magnet_height_mm = args.optional_real(
        "safe_magnet_height_mm", safe_magnet_height_mm, units="mm"
    )
    video, every_n = check_video_option(args, video, every_n)
    md = args.metadata("md", md)
    check_microscope(microscope, plan, tracker=True)
    (force,) = yield from require_force_calibration(
        microscope, [force_pn], plan=plan, argument="force_pn", single=True
    )
    yield from check_axis_limits(
        microscope.magnet_rotation, steps_turns, plan=plan, argument="turns", units="turns",
        what="rotation",
    )
    safe_magnet_height_mm = yield from check_safe_height(
        microscope, safe_magnet_height_mm, plan=plan
    )
    sel = yield from select_beads(microscope, wanted, plan=plan)
    cal = yield from loaded_force_calibration(microscope)
    turns0 = float((yield from bps.rd(microscope.magnet_rotation)))
    fs = float((yield from bps.rd(microscope.camera.frame_rate_hz)))
    frames = max(1, int(round(dwell_s * fs)))
    recorder = TrackRecorder(
        microscope.tracker, chunk_frames=frames, video=getattr(microscope, "video", None)
    )
    steps = ResultRecord(EXTENSION_FIELDS, name="extension")
    buckling = ResultRecord(BUCKLING_FIELDS, name="buckling")
    yield from set_layouts(microscope.tracker, sel.beads, steps, buckling)
    _md = plan_metadata(
        plan,
        {
            "turns": steps_turns, "force_pn": force, "dwell_s": dwell_s,
            "settle_s": settle_s,
        },
        sel,
        md,
        turns_start=turns0,
        bead_radius_offsets_nm=cal.radius_offsets_nm(sel.beads)[0].tolist(),
        num_points=len(steps_turns),
        progress_stream="extension",
    )

    @bpp.stage_decorator([microscope])
    @bpp.run_decorator(md=_md)
    def inner() -> Generator[Msg, Any, None]:
        yield from bps.mv(microscope.force, force)
        ext_rows, err_rows = [], []
        for t in steps_turns:
            yield from bps.mv(microscope.magnet_rotation, t)
            yield from bps.sleep(settle_s)
            _, ext, err, _ = yield from _measure(
                microscope, sel, recorder, cal, steps, force_pn=force, turns=t, frames=frames
            )
            ext_rows.append(ext)
            err_rows.append(err)
        E, S = np.array(ext_rows), np.array(err_rows)
        results = [
            buckling_point(steps_turns, E[:, b], extension_err_nm=S[:, b])
            for b in range(sel.beads.size)
        ]
        yield from emit(
            buckling, "buckling",
            force_pn=force, bead_id=sel.beads,
            positive_turns=[r.positive_turns for r in results],
            positive_turns_err=[r.positive_turns_err for r in results],
            negative_turns=[r.negative_turns for r in results],
            negative_turns_err=[r.negative_turns_err for r in results],
            plateau_nm=[r.plateau_nm for r in results],
            positive_slope_nm_per_turn=[r.positive_slope_nm_per_turn for r in results],
        )

    return (
        yield from with_safe_finish(
            with_video_mode(inner(), microscope, video, every_n), microscope,
            safe_magnet_height_mm=safe_magnet_height_mm,
            restore_turns=turns0,
        )
    )
