"""Force calibration: force per bead against magnet height, and the curve ``Force`` uses."""


import dataclasses
import logging
import time
import warnings
from collections.abc import Generator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import Msg

from magscope_devices._force_curve import ForceCalibration
from magscope_devices._microscope import Microscope
from magscope_tracking import ZLUT

from ._arguments import PlanArgs, PlanArgumentError, PreflightError
from ._bead_match import MAX_ROI_SHIFT_PX, match_beads, rois_metadata
from ._preflight import (
    check_magnet_heights,
    check_microscope,
    plan_metadata,
    select_beads,
)
from ._recording import TrackRecorder, extension_traces, lateral_traces
from ._results import ARRAY, FLOAT, IDS, ResultRecord, emit, set_layouts
from ._run_results import force_calibration_from_run
from ._safety import check_safe_height, with_safe_finish
from ._video import check_video_option, with_video_mode
from .analysis import (
    ForceResult,
    allan_force,
    expected_corner_hz,
    fit_ensemble_force,
    psd_force,
    record_length_s,
    thermal_energy_pn_nm,
    water_viscosity_pa_s,
)
from .analysis.bead_radius import combine_estimates, radius_from_drag
from .analysis.pattern_radius import PatternRadiusFit, fit_pattern_radius, pattern_contrast

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_FIELDS",
    "FIT_FIELDS",
    "calibration_cache_path",
    "calibration_from_heights",
    "fit_band_hz",
    "force_calibration",
    "forces_at_height",
    "load_force_calibration",
    "ring_contrasts",
]

#: Per magnet height, stream ``calibration`` (one value per bead unless a number).
CALIBRATION_FIELDS: dict[str, tuple[Any, str]] = {
    "magnet_z_mm": (FLOAT, "mm"),
    "record_s": (FLOAT, "s"),
    "bead_id": (IDS, ""),
    "extension_nm": (ARRAY, "nm"),
    "force_psd_pn": (ARRAY, "pN"),
    "force_psd_pn_err": (ARRAY, "pN"),
    "stiffness_pn_per_nm": (ARRAY, "pN/nm"),
    "stiffness_pn_per_nm_err": (ARRAY, "pN/nm"),
    "corner_hz": (ARRAY, "Hz"),
    "corner_hz_err": (ARRAY, "Hz"),
    "drag_pn_s_per_nm": (ARRAY, "pN s/nm"),
    "drag_pn_s_per_nm_err": (ARRAY, "pN s/nm"),
    "force_allan_pn": (ARRAY, "pN"),
    "force_allan_pn_err": (ARRAY, "pN"),
    "force_plain_psd_pn": (ARRAY, "pN"),
    "radius_nm": (ARRAY, "nm"),
    "radius_nm_err": (ARRAY, "nm"),
    # the camera frames of the record the forces come from (first, last; a pilot record
    # before it is not used): what re-analysis re-tracks (magscope_session.recalibrate)
    "frame_first": (FLOAT, ""),
    "frame_last": (FLOAT, ""),
}

#: Once per run, stream ``force_fit``: the double exponential F(z) the Force device uses,
#: the calibrated range of magnet heights and when it was made (all
#: :func:`magscope_plans._run_results.force_calibration_from_run` needs).
FIT_FIELDS: dict[str, tuple[Any, str]] = {
    "f0_pn": (FLOAT, "pN"),
    "f0_pn_err": (FLOAT, "pN"),
    "a": (FLOAT, ""),
    "a_err": (FLOAT, ""),
    "l1_mm": (FLOAT, "mm"),
    "l1_mm_err": (FLOAT, "mm"),
    "l2_mm": (FLOAT, "mm"),
    "l2_mm_err": (FLOAT, "mm"),
    "rms_relative_residual": (FLOAT, ""),
    "min_height_mm": (FLOAT, "mm"),
    "max_height_mm": (FLOAT, "mm"),
    "bead_id": (IDS, ""),
    "bead_scale": (ARRAY, ""),
    "bead_scale_err": (ARRAY, ""),
    "covariance": (ARRAY, ""),
    "created": (FLOAT, "s"),
    "bead_radius_nm": (ARRAY, "nm"),
    "bead_radius_nm_err": (ARRAY, "nm"),
    "reference_radius_nm": (FLOAT, "nm"),
    "reference_radius_nm_err": (FLOAT, "nm"),
    # the intrinsic scatter of the line from ring contrast to radius the reference beads'
    # radius came from (NaN: they took the beads' mean radius, no Z-LUT line)
    "radius_pattern_scatter_nm": (FLOAT, "nm"),
}


def calibration_cache_path(data_dir: Path | str, uid: str) -> Path:
    """Where the force calibration of run ``uid`` is cached (rebuilt from the run when
    gone)."""
    return Path(data_dir) / f"force-calibration-{uid}.json"


def _per_bead(results: list[ForceResult], attr: str) -> np.ndarray:
    return np.array([getattr(r, attr) for r in results], dtype=float)


#: The PSD fit stops at this many expected corner frequencies (or at Nyquist): above,
#: a slow bead's spectrum sinks under the tracking noise floor, which the model lacks.
FIT_BAND_CORNERS = 25.0


def fit_band_hz(trace_nm, *, length_nm: float, radius_nm: float, fs_hz: float) -> float:
    """Upper frequency (Hz) of the PSD fit for one bead: ``FIT_BAND_CORNERS`` times the
    corner frequency expected from equipartition (F = kT (l + R) / var), at most fs / 2."""
    var = float(np.nanvar(trace_nm))
    if not (np.isfinite(var) and var > 0 and np.isfinite(length_nm)):
        return fs_hz / 2
    force = thermal_energy_pn_nm() * (length_nm + radius_nm) / var
    fc = float(expected_corner_hz(force, max(length_nm, 0.0), radius_nm))
    return float(min(fs_hz / 2, max(FIT_BAND_CORNERS * fc, 20.0 * fs_hz / len(trace_nm))))


def _record_frames(
    pilot: dict[str, np.ndarray],
    sel,
    *,
    fs_hz: float,
    exposure_s: float,
    radius_nm: float,
    rel_error: float,
    axis: str,
    min_s: float,
    max_s: float,
) -> int:
    """Frames to record so that the slowest bead's force has ``rel_error`` (relative
    standard error), from a pilot record: equipartition gives each bead's force, the
    extension its length, and :func:`record_length_s` the time for the expected corner
    frequency; clipped to [min_s, max_s]."""
    ext = np.nanmean(extension_traces(pilot, sel.beads, sel.reference), axis=0)
    lateral = lateral_traces(pilot, sel.beads, sel.reference, axis=axis)
    var = np.nanvar(lateral, axis=0)
    kt = thermal_energy_pn_nm()
    with np.errstate(invalid="ignore", divide="ignore"):
        force = kt * (ext + radius_nm) / var
    ok = np.isfinite(force) & (force > 0) & np.isfinite(ext) & (ext > 0)
    if not np.any(ok):
        return int(round(max_s * fs_hz))
    seconds = record_length_s(
        force[ok], ext[ok], radius_nm, fs_hz=fs_hz, exposure_s=exposure_s, rel_error=rel_error
    )
    longest = float(np.max(np.atleast_1d(seconds)))
    return int(round(min(max(longest, min_s), max_s) * fs_hz))


def force_calibration(
    microscope: Microscope,
    magnet_heights_mm: Sequence[float],
    *,
    duration_s: float | None = None,
    beads: Sequence[int] | None = None,
    axis: str = "y",
    rel_error: float = 0.05,
    pilot_s: float = 2.0,
    max_duration_s: float = 120.0,
    settle_s: float = 0.5,
    chunk_frames: int = 100,
    viscosity_pa_s: float | None = None,
    safe_magnet_height_mm: float | None = None,
    video: str | None = None,
    every_n: int | None = None,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Measure the force on every selected bead at each magnet height (mm) and fit the
    magnet-height to force curve that ``microscope.force`` then uses; measure each bead's
    radius on the way.

    At each height the beads' positions are recorded at the full frame rate for
    ``duration_s`` (s), or, when None, for as long as the slowest bead needs for a
    relative force error ``rel_error`` (from its expected corner frequency, measured in a
    ``pilot_s`` pilot record; at most ``max_duration_s``). The motion along ``axis``
    (perpendicular to the field) gives the force two ways: the power spectral density
    fitted with the camera's exposure blur and aliasing (``psd_force``), and the Allan
    variance (``allan_force``); the plain Lorentzian fit is stored beside them to show the
    correction. The spectrum is fitted up to :func:`fit_band_hz` (25 expected corner
    frequencies, at most Nyquist), where a slow bead's motion is still above the tracking
    noise. The pendulum's length (tether plus bead radius) is the bead's height above the
    reference beads (anchored Z-LUT) plus the reference beads' radius, taken as
    ``microscope.tracker.bead_radius_nm``.

    Each bead's radius comes from the drag the spectrum fit finds at each height, through
    Stokes' law with Faxen's wall correction at the bead's height
    (:func:`~magscope_plans.analysis.radius_from_drag`, in ``viscosity_pa_s``, Pa s;
    None: water at 23 C, 9.33e-4 Pa s), combined over the heights (inverse-variance
    weighted); the reference beads (stuck: no drag) are taken to have the tethered beads'
    mean radius, with the batch's scatter over their number as its error. The
    calibration keeps them: plans that report extensions subtract each bead's radius
    minus the reference beads' (:meth:`ForceCalibration.radius_offsets_nm`), so an
    extension is the tether's, not the bead centre's height.

    Streams: ``tracks`` (every frame, HDF5), ``calibration`` (one event per height: per
    bead force, stiffness, corner frequency, drag and their standard errors, extension),
    ``force_fit`` (the double exponential F(z) = f0 (a e^(-z/l1) + (1-a) e^(-z/l2)) fitted
    to the beads' median PSD force, each bead's force relative to it, the calibrated
    range, each bead's radius and the reference beads', with their errors; the
    ``calibration`` stream has the radius from each height). Every stream's configuration holds the beads' layout (ids, ROI origins, ROI
    size, nm/px, Z-LUT run uid). After the run the calibration is cached in the tracker's
    data folder as ``force-calibration-<uid>.json`` (:func:`calibration_cache_path`) and
    loaded into ``microscope.force``; :func:`load_force_calibration` reloads it later. The
    magnets end at ``safe_magnet_height_mm`` (mm; None: the microscope's configured safe height).

    ``video``: ``"roi_crops"`` records every bead's ROI at every frame into stream
    ``video`` (``"frames_every_n"``: every ``every_n``-th whole frame), so that the
    calibration can be recomputed later from re-tracked images
    (:func:`magscope_session.recalibrate`); None leaves ``microscope.video.mode`` as it
    is. Returns the run uid.
    """
    plan = "force_calibration"
    args = PlanArgs(plan)
    heights = args.reals(
        "magnet_heights_mm", magnet_heights_mm, units="mm", what="magnet heights",
        example="[1.0, 2.0, 3.0, 4.5, 6.5]", min_length=2, min_distinct=2,
    )
    duration_s = args.optional_real("duration_s", duration_s, units="s", low=0.0, low_open=True)
    wanted = args.bead_ids("beads", beads)
    axis = args.choice("axis", axis, ("x", "y"))
    rel_error = args.real("rel_error", rel_error, low=0.0, high=1.0, low_open=True, high_open=True)
    pilot_s = args.positive("pilot_s", pilot_s, units="s")
    max_duration_s = args.real("max_duration_s", max_duration_s, units="s", low=pilot_s)
    settle_s = args.non_negative("settle_s", settle_s, units="s")
    chunk_frames = args.count("chunk_frames", chunk_frames, minimum=1, what="a whole number of frames")
    viscosity_pa_s = args.optional_real(
        "viscosity_pa_s", viscosity_pa_s, units="Pa s", low=1e-5, high=10.0
    )
    eta = water_viscosity_pa_s() if viscosity_pa_s is None else viscosity_pa_s
    safe_magnet_height_mm = args.optional_real(
        "safe_magnet_height_mm", safe_magnet_height_mm, units="mm"
    )
    video, every_n = check_video_option(args, video, every_n)
    md = args.metadata("md", md)
    check_microscope(microscope, plan, tracker=True)
    heights = yield from check_magnet_heights(microscope, heights, plan=plan, min_heights=2)
    safe_magnet_height_mm = yield from check_safe_height(
        microscope, safe_magnet_height_mm, plan=plan
    )
    sel = yield from select_beads(microscope, wanted, plan=plan)
    tracker = microscope.tracker
    fs = float((yield from bps.rd(microscope.camera.frame_rate_hz)))
    exposure = float((yield from bps.rd(microscope.camera.exposure_s)))
    radius = float((yield from bps.rd(tracker.bead_radius_nm)))
    recorder = TrackRecorder(
        tracker, chunk_frames=chunk_frames, video=getattr(microscope, "video", None)
    )
    per_height_record = ResultRecord(CALIBRATION_FIELDS, name="calibration")
    fit_record = ResultRecord(FIT_FIELDS, name="force_fit")
    _md = plan_metadata(
        plan,
        {
            "magnet_heights_mm": heights, "duration_s": duration_s,
            "axis": axis, "rel_error": rel_error,
            "pilot_s": pilot_s, "max_duration_s": max_duration_s, "settle_s": settle_s,
            "viscosity_pa_s": viscosity_pa_s,
        },
        sel,
        md,
        frame_rate_hz=fs,
        exposure_s=exposure,
        bead_radius_nm=radius,
        viscosity_pa_s=eta,
        bead_rois=rois_metadata((yield from bps.rd(tracker.rois)), sel.beads.tolist()),
        num_points=len(heights),
        progress_stream="calibration",
    )

    yield from set_layouts(tracker, sel.beads, per_height_record, fit_record)
    made: list[ForceCalibration] = []

    @bpp.stage_decorator([microscope])
    @bpp.run_decorator(md=_md)
    def inner() -> Generator[Msg, Any, None]:
        per_height: list[dict[str, Any]] = []
        for h in heights:
            yield from bps.mv(microscope.magnet_z, h)
            yield from bps.sleep(settle_s)
            if duration_s is None:
                pilot = yield from recorder.record_whole(int(round(pilot_s * fs)))
                n_frames = _record_frames(
                    pilot, sel, fs_hz=fs, exposure_s=exposure, radius_nm=radius,
                    rel_error=rel_error, axis=axis, min_s=pilot_s, max_s=max_duration_s,
                )
            else:
                n_frames = int(round(duration_s * fs))
            tracks = yield from recorder.record_whole(n_frames)
            values = forces_at_height(
                tracks, sel.beads, sel.reference, fs_hz=fs, exposure_s=exposure,
                radius_nm=radius, viscosity_pa_s=eta, axis=axis,
            )
            per_height.append(values)
            yield from emit(per_height_record, "calibration", magnet_z_mm=h,
                            bead_id=sel.beads, **values)
        contrast, reference_contrast = yield from _ring_contrasts(tracker, sel)
        cal, fit_values = calibration_from_heights(
            heights, per_height, sel.beads, n_reference=len(sel.reference),
            viscosity_pa_s=eta, nominal_radius_nm=radius, contrast=contrast,
            reference_contrast=reference_contrast,
        )
        made.append(cal)
        yield from emit(fit_record, "force_fit", bead_id=sel.beads, **fit_values)

    def calibrate() -> Generator[Msg, Any, str]:
        uid = yield from inner()
        path = calibration_cache_path(tracker.data_dir, uid)
        dataclasses.replace(made[-1], source=uid).save(path)
        yield from bps.mv(microscope.force.calibration_file, str(path))
        return uid

    return (
        yield from with_safe_finish(
            with_video_mode(calibrate(), microscope, video, every_n), microscope,
            safe_magnet_height_mm=safe_magnet_height_mm,
        )
    )


def forces_at_height(
    tracks: dict[str, np.ndarray], beads: np.ndarray, reference: np.ndarray, *,
    fs_hz: float, exposure_s: float, radius_nm: float, viscosity_pa_s: float, axis: str,
) -> dict[str, Any]:
    """The forces of one magnet height from its record (a tracks dict: ``x_nm``, ``y_nm``,
    ``z_nm`` (frames, beads) nm, ``bead_id``, ``frame_index``): per bead (``beads``, in
    that order) the PSD force (exposure blur and aliasing corrected), the Allan and the
    plain Lorentzian force (pN), stiffness (pN/nm), corner frequency (Hz), drag
    (pN s/nm) with their standard errors, the mean height above the ``reference`` beads
    (``extension_nm``) and the radius its drag gives (nm, Stokes with Faxen's wall
    correction in ``viscosity_pa_s``, Pa s); ``record_s`` and the record's first and
    last camera frame. The values of the ``calibration`` stream; a pure function (the
    plan and :func:`magscope_session.recalibrate` both use it)."""
    ext_all = extension_traces(tracks, beads, reference)
    lateral = lateral_traces(tracks, beads, reference, axis=axis)
    psd, allan, plain, ext = [], [], [], []
    for b in range(len(beads)):
        length = float(np.nanmean(ext_all[:, b]))
        ext.append(length)
        kw: dict[str, Any] = dict(
            fs_hz=fs_hz, exposure_s=exposure_s, length_nm=length, radius_nm=radius_nm
        )
        band = fit_band_hz(lateral[:, b], length_nm=length, radius_nm=radius_nm, fs_hz=fs_hz)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            psd.append(psd_force(lateral[:, b], **kw, f_max_hz=band))
            allan.append(allan_force(lateral[:, b], **kw))
            plain.append(
                psd_force(
                    lateral[:, b], **kw, f_max_hz=band, blur_correction=False,
                    aliasing_correction=False,
                )
            )
    extension = np.asarray(ext, float)
    r_h, r_h_err = radius_from_drag(
        _per_bead(psd, "drag_pn_s_per_nm"), extension + radius_nm, viscosity_pa_s,
        _per_bead(psd, "drag_pn_s_per_nm_err"),
    )
    frames = np.asarray(tracks["frame_index"], float)
    return {
        "record_s": np.float64(lateral.shape[0] / fs_hz),
        "extension_nm": extension,
        "force_psd_pn": _per_bead(psd, "force_pn"),
        "force_psd_pn_err": _per_bead(psd, "force_pn_err"),
        "stiffness_pn_per_nm": _per_bead(psd, "stiffness_pn_per_nm"),
        "stiffness_pn_per_nm_err": _per_bead(psd, "stiffness_pn_per_nm_err"),
        "corner_hz": _per_bead(psd, "corner_hz"),
        "corner_hz_err": _per_bead(psd, "corner_hz_err"),
        "drag_pn_s_per_nm": _per_bead(psd, "drag_pn_s_per_nm"),
        "drag_pn_s_per_nm_err": _per_bead(psd, "drag_pn_s_per_nm_err"),
        "force_allan_pn": _per_bead(allan, "force_pn"),
        "force_allan_pn_err": _per_bead(allan, "force_pn_err"),
        "force_plain_psd_pn": _per_bead(plain, "force_pn"),
        "radius_nm": np.asarray(r_h, float),
        "radius_nm_err": np.asarray(r_h_err, float),
        "frame_first": np.float64(frames[0] if frames.size else np.nan),
        "frame_last": np.float64(frames[-1] if frames.size else np.nan),
    }


def calibration_from_heights(
    heights: Sequence[float], per_height: Sequence[dict[str, Any]],
    beads: np.ndarray, *, n_reference: int, viscosity_pa_s: float,
    nominal_radius_nm: float, contrast: np.ndarray | None = None,
    reference_contrast: np.ndarray | None = None, created: float | None = None,
) -> tuple[ForceCalibration, dict[str, Any]]:
    """The calibration from the :func:`forces_at_height` values of each magnet height
    (mm): every bead's radius (:func:`bead_radii`, with the ring ``contrast`` of the beads
    and ``reference_contrast`` of the reference beads when there is a Z-LUT), the forces
    with the measured pendulum length, and F(z) fitted to them weighted by their errors.
    Returns the :class:`ForceCalibration` and the values of the ``force_fit`` stream
    (without ``bead_id``). A pure function."""
    def stack(key: str) -> np.ndarray:
        return np.array([values[key] for values in per_height], dtype=float)

    above_refs = stack("extension_nm")
    radii = bead_radii(
        stack("drag_pn_s_per_nm"), stack("drag_pn_s_per_nm_err"), above_refs,
        viscosity_pa_s=viscosity_pa_s, nominal_radius_nm=nominal_radius_nm,
        n_reference=n_reference, contrast=contrast, reference_contrast=reference_contrast,
    )
    if radii.pattern is None:
        logger.info("force_calibration: the reference beads take the beads' mean radius "
                    "(%s)", "no Z-LUT" if contrast is None else
                    "too few beads with a radius and a ring contrast")
    forces, errors, lever_rel_err = _with_measured_lever(
        stack("force_psd_pn"), stack("force_psd_pn_err"), above_refs,
        nominal_radius_nm=nominal_radius_nm, radii=radii,
    )
    calibration = _fit_calibration(heights, forces, errors, common_rel_err=lever_rel_err)
    fit = calibration.fit
    cal = ForceCalibration(
        f0_pn=fit.f0_pn, a=fit.a, l1_mm=fit.l1_mm, l2_mm=fit.l2_mm,
        min_height_mm=min(heights), max_height_mm=max(heights),
        bead_ids=tuple(int(b) for b in beads),
        bead_scale=tuple(float(s) for s in calibration.bead_scale),
        bead_scale_err=tuple(float(e) for e in calibration.bead_scale_err),
        covariance=calibration.covariance,
        created=time.time() if created is None else created,
        bead_radius_nm=tuple(float(r) for r in radii.radius_nm),
        bead_radius_nm_err=tuple(float(e) for e in radii.radius_nm_err),
        reference_radius_nm=radii.reference_nm,
        reference_radius_nm_err=radii.reference_nm_err,
    )
    fit_values = dict(
        f0_pn=fit.f0_pn, f0_pn_err=fit.f0_pn_err, a=fit.a, a_err=fit.a_err,
        l1_mm=fit.l1_mm, l1_mm_err=fit.l1_mm_err, l2_mm=fit.l2_mm, l2_mm_err=fit.l2_mm_err,
        rms_relative_residual=fit.rms_relative_residual,
        min_height_mm=cal.min_height_mm, max_height_mm=cal.max_height_mm,
        bead_scale=calibration.bead_scale, bead_scale_err=calibration.bead_scale_err,
        covariance=np.asarray(cal.covariance, float).reshape(-1) if cal.covariance
        else np.full(16, np.nan),
        created=cal.created,
        bead_radius_nm=radii.radius_nm, bead_radius_nm_err=radii.radius_nm_err,
        reference_radius_nm=_nan_if_none(radii.reference_nm),
        reference_radius_nm_err=_nan_if_none(radii.reference_nm_err),
        radius_pattern_scatter_nm=(radii.pattern.scatter_nm if radii.pattern is not None
                                   else float("nan")),
    )
    return cal, fit_values


def _ring_contrasts(
    tracker: Any, sel: Any
) -> Generator[Msg, Any, tuple[np.ndarray | None, np.ndarray | None]]:
    """:func:`ring_contrasts` of the selected beads and reference beads in the tracker's
    Z-LUT; (None, None) without a Z-LUT."""
    path = yield from bps.rd(tracker.zlut_path)
    if not path:
        return None, None
    return ring_contrasts(ZLUT.load(path), sel.beads, sel.reference)


def ring_contrasts(
    lut: ZLUT, beads: Any, reference: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The ring contrast (:func:`pattern_contrast`) of each of ``beads`` and of
    ``reference`` (bead ids) in ``lut``, NaN for a bead it lacks: what
    :func:`calibration_from_heights` fits the reference beads' radius with."""
    contrast = pattern_contrast(lut.profiles)
    row = {int(b): i for i, b in enumerate(lut.bead_ids)}

    def pick(ids: Any) -> np.ndarray:
        return np.array([contrast[row[int(b)]] if int(b) in row else np.nan for b in ids],
                        dtype=float)

    return pick(beads), pick(reference)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


class BeadRadii(NamedTuple):
    """Each bead's radius (nm) and its error, and the reference beads' (None: unknown);
    ``pattern``: the line from ring contrast to radius, if the Z-LUT gave one."""

    radius_nm: np.ndarray
    radius_nm_err: np.ndarray
    reference_nm: float | None
    reference_nm_err: float | None
    pattern: PatternRadiusFit | None = None


def bead_radii(
    drag: np.ndarray, drag_err: np.ndarray, height_above_refs_nm: np.ndarray, *,
    viscosity_pa_s: float, nominal_radius_nm: float, n_reference: int,
    contrast: np.ndarray | None = None, reference_contrast: np.ndarray | None = None,
) -> BeadRadii:
    """Radii from the drags of a calibration, (heights, beads) arrays each (pN s/nm, nm).

    A bead's centre is at its height above the reference beads' centres plus their
    radius. That radius starts at ``nominal_radius_nm`` and is refined twice.

    With the beads' ring contrasts (``contrast``, one per bead, and
    ``reference_contrast``, one per reference bead: :func:`pattern_contrast` of the
    Z-LUT) a line from contrast to radius is fitted to the drag radii
    (:func:`fit_pattern_radius`): the reference beads take the mean radius it gives at
    their contrasts, and each bead's drag radius is combined with the one the line fitted
    without it gives. Without them (or too few beads), the reference beads take the mean
    of the beads' radii (the same batch), with an error of the batch's scatter over
    sqrt(``n_reference``) combined with the error of the mean itself.
    """
    reference = float(nominal_radius_nm)
    reference_err = float("nan")
    pattern: PatternRadiusFit | None = None
    for _ in range(3):
        r, r_err = radius_from_drag(drag, height_above_refs_nm + reference, viscosity_pa_s,
                                    drag_err)
        radius, radius_err = combine_estimates(r, r_err, axis=0)
        known = np.isfinite(radius)
        if not known.any():
            return BeadRadii(radius, radius_err, None, None)
        pattern = None
        if contrast is not None and reference_contrast is not None:
            pattern = fit_pattern_radius(contrast, radius, radius_err)
        ref = (pattern.mean_radius_nm(reference_contrast) if pattern is not None
               else (float("nan"), float("nan")))
        if np.isfinite(ref[0]) and np.isfinite(ref[1]):
            reference, reference_err = ref
            continue
        pattern = None
        reference = float(np.mean(radius[known]))
        n = int(known.sum())
        spread = float(np.std(radius[known], ddof=1)) if n > 1 else float(radius_err[known][0])
        reference_err = float(np.hypot(spread / np.sqrt(max(n_reference, 1)), spread / np.sqrt(n)))
    if pattern is not None:
        radius, radius_err = combine_estimates(
            np.stack([radius, pattern.leave_one_out_nm]),
            np.stack([radius_err, pattern.leave_one_out_err_nm]), axis=0,
        )
    return BeadRadii(radius, radius_err, reference, reference_err, pattern)


class _Calibration(NamedTuple):
    """The ensemble fit, each bead's force relative to it and the errors of both."""

    fit: Any
    bead_scale: np.ndarray
    bead_scale_err: np.ndarray
    covariance: tuple[tuple[float, ...], ...]


def _with_measured_lever(
    forces: np.ndarray, errors: np.ndarray, above_refs_nm: np.ndarray, *,
    nominal_radius_nm: float, radii: BeadRadii,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The forces (heights, beads) with the pendulum's length the calibration measured.

    F = k (l + R) and l + R is the height above the reference beads plus their radius: the
    spectra were fitted with the nominal radius, the calibration then knows the reference
    beads' (the batch's mean, :func:`bead_radii`), so each force is scaled by the ratio of
    the two lengths. Its error, common to every bead, is returned apart (relative, at the
    median length) to go into the curve's covariance, not into each point (it does not
    average down over beads)."""
    if radii.reference_nm is None:
        return forces, errors, 0.0
    nominal = above_refs_nm + nominal_radius_nm
    measured = above_refs_nm + radii.reference_nm
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(nominal > 0, measured / nominal, np.nan)
        lever_rel = float((radii.reference_nm_err or 0.0) / np.nanmedian(measured))
    return forces * ratio, errors * ratio, lever_rel if np.isfinite(lever_rel) else 0.0


def _fit_calibration(
    heights, forces: np.ndarray, errors: np.ndarray, *, common_rel_err: float = 0.0
) -> _Calibration:
    """Fit F(z) and every bead's scale to all the beads' forces at all heights (each
    weighted by its own error: :func:`~magscope_plans.analysis.fit_ensemble_force`). A
    bead without a usable force anywhere gets scale 1 (error NaN). ``common_rel_err``: a
    relative error every force shares (the pendulum length's), added to the curve's
    covariance as an error of f0."""
    try:
        ensemble = fit_ensemble_force(heights, forces, errors)
    except ValueError as exc:
        raise RuntimeError(
            f"force_calibration: {exc}; record longer (duration_s) or calibrate at more "
            "heights"
        ) from None
    scale = np.where(np.isfinite(ensemble.bead_scale), ensemble.bead_scale, 1.0)
    curve = ensemble.curve
    cov = curve.covariance
    if cov is not None and common_rel_err > 0:
        cov = cov.copy()
        cov[0, 0] += (curve.f0_pn * common_rel_err) ** 2
        curve = dataclasses.replace(curve, covariance=cov, f0_pn_err=float(np.sqrt(cov[0, 0])))
    covariance = () if cov is None else tuple(tuple(float(v) for v in row) for row in cov)
    return _Calibration(curve, scale, ensemble.bead_scale_err, covariance)


def load_force_calibration(
    microscope: Microscope,
    run: Any,
    *,
    allow_mismatch: bool = False,
    max_shift_px: float = MAX_ROI_SHIFT_PX,
) -> Generator[Msg, Any, ForceCalibration]:
    """Load the force calibration of a past ``force_calibration`` run (a Tiled run client)
    into ``microscope.force``; returns it. The calibration comes from the cache
    ``force-calibration-<uid>.json`` in the tracker's data folder, else from the run
    (:func:`magscope_plans._run_results.force_calibration_from_run`), cached there first.

    Each bead's force is scaled by its own factor from the calibration (by bead id), so
    the calibration must be of the beads tracked now: a tethered bead (not a reference
    bead) with no factor in it, or whose ROI is more than ``max_shift_px`` (px) from where
    the calibration saw a bead with its id, is refused unless ``allow_mismatch``. Prints
    which bead got which factor."""
    from ._zlut import _start_document

    plan = "load_force_calibration"
    args = PlanArgs(plan)
    allow_mismatch = args.flag("allow_mismatch", allow_mismatch)
    max_shift_px = args.non_negative("max_shift_px", max_shift_px, units="px")
    check_microscope(microscope, plan, tracker=True, ready=False)
    start = _start_document(run, plan)
    if start.get("plan_name") != "force_calibration":
        raise PlanArgumentError(
            plan, "run", start.get("uid"), f"is a {start.get('plan_name')!r} run",
            "a force_calibration run: only it holds a force calibration",
        )
    path = calibration_cache_path(microscope.tracker.data_dir, str(start["uid"]))
    if path.is_file():
        cal = ForceCalibration.load(path)
    else:
        cal = force_calibration_from_run(run)
        cal.save(path)
    rois = yield from bps.rd(microscope.tracker.rois)
    reference = yield from bps.rd(microscope.tracker.reference_beads)
    tethered = ~np.isin(np.asarray(rois.bead_id), np.asarray(reference))
    rois = SimpleNamespace(
        bead_id=np.asarray(rois.bead_id)[tethered], x0_px=np.asarray(rois.x0_px)[tethered],
        y0_px=np.asarray(rois.y0_px)[tethered],
    )
    match = match_beads(
        f"the force calibration of run {str(start.get('uid'))[:8]}", cal.bead_ids, rois,
        start.get("bead_rois"), max_shift_px=max_shift_px,
    )
    if not match.ok and not allow_mismatch:
        raise PreflightError(
            f"{plan}: {match.what} does not fit the tethered beads tracked now: "
            f"{match.problems()}; run force_calibration for these beads, or pass "
            "allow_mismatch=True to apply it by bead id anyway"
        )
    yield from bps.mv(microscope.force.calibration_file, str(path))
    print(match.summary())
    return cal
