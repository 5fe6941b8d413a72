"""Force calibrations recomputed from re-tracked images.

A ``force_calibration`` run recorded with ``video="roi_crops"`` keeps every bead's ROI at
every frame, and its ``calibration`` stream names, per magnet height, the camera frames
the forces came from (``frame_first``, ``frame_last``). :func:`recalibrate` re-tracks
those crops (:func:`~magscope_session._reanalysis.reanalyse`, on Dask or serially) with
another Z-LUT or tracking options and runs the plan's own analysis on them again
(:func:`~magscope_plans._force_calibration.forces_at_height` per height, then
:func:`~magscope_plans._force_calibration.calibration_from_heights`): per-bead forces,
radii and the F(z) curve. :func:`write_recalibration` sends the result to Tiled as a new
run with the ``calibration`` and ``force_fit`` streams of a calibration run, so
:func:`magscope_session.force_calibration_of` (and ``load_force_calibration``) read it
as they read the plan's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._reanalysis import ReanalysisResult, reanalyse

__all__ = ["Recalibration", "recalibrate", "recalibration_of", "write_recalibration"]


@dataclasses.dataclass(frozen=True)
class Recalibration:
    """A force calibration recomputed from re-tracked crops: the magnet heights (mm),
    the ``calibration`` stream's values at each, the ``force_fit`` values and the
    :class:`~magscope_devices.ForceCalibration` (``source`` None until written)."""

    source_run: str
    zlut_run: str
    options: dict[str, Any]
    heights_mm: tuple[float, ...]
    bead_ids: np.ndarray
    reference_bead_ids: np.ndarray
    per_height: tuple[dict[str, Any], ...]
    fit: dict[str, Any]
    calibration: Any
    layout: Any


def _calibration_plan(start: dict[str, Any], uid: str) -> dict[str, Any]:
    if start.get("plan_name") != "force_calibration":
        raise ValueError(f"run {uid} is a {start.get('plan_name')!r} run, not a "
                         "force_calibration: there is no calibration to recompute")
    try:
        return {
            "beads": np.asarray(start["bead_ids"], np.int64),
            "reference": np.asarray(start["reference_bead_ids"], np.int64),
            "fs_hz": float(start["frame_rate_hz"]),
            "exposure_s": float(start["exposure_s"]),
            "radius_nm": float(start["bead_radius_nm"]),
            "viscosity_pa_s": float(start["viscosity_pa_s"]),
            "axis": str(start["plan_args"]["axis"]),
        }
    except KeyError as exc:
        raise ValueError(f"force_calibration run {uid} lacks {exc.args[0]!r} in its start "
                         "document (made by an older version?)") from None


def recalibration_of(run: Any, result: ReanalysisResult, zlut: Any) -> Recalibration:
    """The calibration of ``run`` (a ``force_calibration`` run client) recomputed from
    ``result``, its crops re-tracked with ``zlut`` (the :class:`~magscope_tracking.ZLUT`
    of ``result.zlut_run``, whose ring patterns give the reference beads' radius).

    Raises ValueError when the run is not a calibration, predates the frame ranges, or
    its re-tracked rows do not cover a height's record frame for frame."""
    from magscope_plans._force_calibration import (
        calibration_from_heights,
        forces_at_height,
        ring_contrasts,
    )
    from magscope_plans._run_results import stream_layout

    start = dict(run.metadata["start"])
    uid = str(start["uid"])
    if result.source_run != uid:
        raise ValueError(f"the re-tracked rows are of run {result.source_run}, not {uid}")
    plan = _calibration_plan(start, uid)
    node = run["calibration"]
    keys = node.metadata.get("data_keys") or {}
    if "calibration-frame_first" not in keys:
        raise ValueError(f"force_calibration run {uid} does not record which frames each "
                         "height's forces came from (made by an older version): it cannot "
                         "be recomputed")
    table = node.read()

    def column(field: str) -> np.ndarray:
        return np.asarray(table[f"calibration-{field}"], float)

    heights = [float(h) for h in column("magnet_z_mm")]
    frames = np.asarray(result.frame_index, np.int64)
    per_height = []
    for h, first, last in zip(heights, column("frame_first"), column("frame_last"),
                              strict=True):
        rows = np.flatnonzero((frames >= int(first)) & (frames <= int(last)))
        expected = int(last) - int(first) + 1
        if rows.size != expected:
            raise ValueError(
                f"run {uid}: the video holds {rows.size} of the {expected} frames of the "
                f"record at {h:g} mm (frames {int(first)}..{int(last)}); a calibration is "
                "recomputed from every frame (record it with video='roi_crops')")
        tracks = {"x_nm": result.x_nm[rows], "y_nm": result.y_nm[rows],
                  "z_nm": result.z_nm[rows], "bead_id": result.bead_ids,
                  "frame_index": frames[rows]}
        per_height.append(forces_at_height(
            tracks, plan["beads"], plan["reference"], fs_hz=plan["fs_hz"],
            exposure_s=plan["exposure_s"], radius_nm=plan["radius_nm"],
            viscosity_pa_s=plan["viscosity_pa_s"], axis=plan["axis"]))
    contrast, reference_contrast = ring_contrasts(zlut, plan["beads"], plan["reference"])
    calibration, fit = calibration_from_heights(
        heights, per_height, plan["beads"], n_reference=plan["reference"].size,
        viscosity_pa_s=plan["viscosity_pa_s"], nominal_radius_nm=plan["radius_nm"],
        contrast=contrast, reference_contrast=reference_contrast)
    layout = dataclasses.replace(stream_layout(node, "calibration"), zlut_uid=result.zlut_run)
    return Recalibration(
        source_run=uid, zlut_run=result.zlut_run, options=dict(result.options),
        heights_mm=tuple(heights), bead_ids=plan["beads"], reference_bead_ids=plan["reference"],
        per_height=tuple(per_height), fit=fit, calibration=calibration, layout=layout)


def recalibrate(
    uri: str, run_uids: Sequence[str], *, zlut_run: str,
    options: dict[str, Any] | None = None, api_key: str | None = None,
    progress: Callable[[int, int], None] | None = None, **reanalyse_kwargs: Any,
) -> list[Recalibration]:
    """Recompute the force calibrations of ``run_uids`` (``force_calibration`` runs
    recorded with ``video="roi_crops"``) from their crops re-tracked with the Z-LUT of run
    ``zlut_run`` and tracking ``options``: :func:`reanalyse` (its keyword arguments:
    ``serial``, ``scheduler``, ``workers``, ``chunk_rows``, ...) then
    :func:`recalibration_of` for each."""
    from . import runs
    from ._tiled_client import connect

    client = connect(uri, api_key)
    for uid in run_uids:  # refused before any re-tracking
        _calibration_plan(dict(client[uid].metadata["start"]), uid)
    results = reanalyse(uri, run_uids, zlut_run=zlut_run, options=options, api_key=api_key,
                        progress=progress, **reanalyse_kwargs)
    zlut = runs.zlut_of(client[zlut_run])
    return [recalibration_of(client[r.source_run], r, zlut) for r in results]


def _data_keys(prefix: str, values: dict[str, Any], units: dict[str, str]) -> dict[str, Any]:
    keys = {}
    for name, value in values.items():
        array = np.asarray(value)
        keys[f"{prefix}-{name}"] = {
            "source": "recalibration", "dtype": "array" if array.ndim else "number",
            "shape": list(array.shape), "units": units.get(name, ""),
            "dtype_numpy": array.dtype.str,
        }
    return keys


def _config_key(value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {"source": "recalibration", "dtype": "array", "shape": [len(value)]}
    kind = "string" if isinstance(value, str) else "number"
    return {"source": "recalibration", "dtype": kind, "shape": []}


def _plain(value: Any) -> Any:
    array = np.asarray(value)
    return array.tolist() if array.ndim else array.item()


def write_recalibration(writer: Callable[[str, Any], Any], rec: Recalibration, *,
                        md: dict[str, Any] | None = None) -> str:
    """Send ``rec`` as a new run through ``writer`` (a document callback): a start naming
    the source run, the Z-LUT run and the tracking options, the ``calibration`` stream
    (one event per height) and the ``force_fit`` stream of a ``force_calibration`` run,
    with the beads' layout in their configuration. Returns the run's uid."""
    from event_model import compose_run

    from magscope_plans._force_calibration import CALIBRATION_FIELDS, FIT_FIELDS

    layout_data = {k: _plain(v) for k, v in dataclasses.asdict(rec.layout).items()}
    start_md = {
        "plan_name": "recalibrate", "source_run": rec.source_run, "zlut_run": rec.zlut_run,
        "tracking_options": rec.options,
        "bead_ids": [int(b) for b in rec.bead_ids],
        "reference_bead_ids": [int(b) for b in rec.reference_bead_ids],
        "magnet_heights_mm": list(rec.heights_mm), **(md or {}),
    }
    bundle = compose_run(metadata=start_md)
    writer("start", bundle.start_doc)
    now = time.time()

    def stream(name: str, fields: dict[str, tuple[Any, str]],
               events: Sequence[dict[str, Any]]) -> None:
        units = {k: u for k, (_, u) in fields.items()}
        data_keys = _data_keys(name, events[0], units)
        config_data = {f"{name}-{k}": v for k, v in layout_data.items()}
        desc = bundle.compose_descriptor(
            name=name,
            data_keys=data_keys,
            configuration={name: {
                "data": config_data, "timestamps": {k: now for k in config_data},
                "data_keys": {k: _config_key(v) for k, v in config_data.items()},
            }},
            object_keys={name: list(data_keys)},
        )
        writer("descriptor", desc.descriptor_doc)
        for values in events:
            data = {f"{name}-{k}": _plain(v) for k, v in values.items()}
            writer("event", desc.compose_event(data=data, timestamps={k: now for k in data}))

    ids = np.asarray(rec.bead_ids, np.int64)
    stream("calibration", CALIBRATION_FIELDS,
           [{"magnet_z_mm": h, "bead_id": ids, **values}
            for h, values in zip(rec.heights_mm, rec.per_height, strict=True)])
    stream("force_fit", FIT_FIELDS, [{"bead_id": ids, **rec.fit}])
    writer("stop", bundle.compose_stop(exit_status="success"))
    return str(bundle.start_doc["uid"])
